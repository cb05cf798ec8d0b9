"""Production: what happens after the router answered. Feedback on answered requests (by route
id) joins the profiles as production outcomes beside the calibration ones; the loop's settings
per clustering (production weight, half-life, exploration, OOD quantile); drift, for
analysts; and onboarding a new model (sampling it on the calibration queries and grading its
answers, so it sits above answering)."""
