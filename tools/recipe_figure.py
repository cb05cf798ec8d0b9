"""The figure of the Concepts page (docs/img/recipe.png): the recipe on a small 2-D picture.
Calibration queries of three tasks are clustered; each cluster keeps every model's mean outcome
on its queries (the capability profile); a new query goes to the nearest centroid and is
answered by that cluster's best models. The points and scores are drawn, not measured: the
picture explains, the Evaluation page measures.

    python -m tools.recipe_figure          # rewrites docs/img/recipe.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avengers_store.figures import pyplot

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "recipe.png"
SEED = 7
CENTRES = {"math": (-2.0, 1.2), "code": (2.1, 1.4), "trivia": (0.2, -1.8)}
MODELS = ("model A", "model B", "model C")
# A model's mean outcome on each cluster's calibration queries (illustrative).
PROFILES = {"math": (0.81, 0.52, 0.40), "code": (0.35, 0.77, 0.58), "trivia": (0.49, 0.44, 0.71)}
QUERY = np.array([1.5, 0.7])


def draw(out: Path = OUT) -> Path:
    rng = np.random.default_rng(SEED)
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), width_ratios=(1.25, 1))
    colours = dict(zip(CENTRES, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for name, centre in CENTRES.items():
        points = rng.normal(centre, 0.55, size=(40, 2))
        left.scatter(*points.T, s=12, alpha=0.55, color=colours[name], label=f"{name} queries")
        left.scatter(*centre, marker="X", s=160, color=colours[name], edgecolor="black")
    nearest = min(CENTRES, key=lambda n: np.linalg.norm(QUERY - np.array(CENTRES[n])))
    left.plot(*zip(QUERY, CENTRES[nearest], strict=True), "k--", linewidth=1)
    left.scatter(*QUERY, marker="*", s=320, color="gold", edgecolor="black", zorder=5)
    left.annotate("new query", QUERY, xytext=(QUERY[0] - 0.3, QUERY[1] - 1.1), fontsize=10)
    left.set_title(
        "1-2. embed and cluster the calibration queries;\n"
        "4. a new query goes to the nearest centroid (X)",
        fontsize=10,
    )
    left.set_xticks([])
    left.set_yticks([])
    left.legend(loc="lower left", fontsize=8, frameon=False)
    width = 0.25
    x = np.arange(len(CENTRES))
    for i, model in enumerate(MODELS):
        scores = [PROFILES[c][i] for c in CENTRES]
        right.bar(x + (i - 1) * width, scores, width, label=model)
    right.set_xticks(x, [f"{c} cluster" for c in CENTRES])
    right.set_ylim(0, 1)
    right.set_ylabel("mean outcome on the cluster's queries")
    best = MODELS[int(np.argmax(PROFILES[nearest]))]
    right.set_title(
        f"3. capability profiles; the {nearest} cluster routes\n"
        f"to {best}, then samples it and votes (5)",
        fontsize=10,
    )
    right.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(draw())
