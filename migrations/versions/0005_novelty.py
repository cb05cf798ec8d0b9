"""Novelty models: per clustering version, a Gaussian of its calibration vectors (mean and the
shrunk covariance's axes) and a threshold measured on held-out calibration vectors, which the
clients score a query's vector against to call it out of distribution.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE avengers.novelty_profiles (
  clustering_id integer PRIMARY KEY REFERENCES avengers.clusterings (id) ON DELETE CASCADE,
  mean          vector NOT NULL,
  threshold     double precision NOT NULL CHECK (threshold >= 0),
  held_out      double precision[] NOT NULL CHECK (cardinality(held_out) > 0),
  n_fit         integer NOT NULL CHECK (n_fit > 0),
  seed          integer NOT NULL
);
COMMENT ON TABLE avengers.novelty_profiles IS 'The novelty model of a clustering version, written when it is stored: a Gaussian of its calibration vectors (Ledoit-Wolf shrunk covariance, axes in avengers.novelty_axes). A query''s novelty is its Mahalanobis distance to it / threshold; above 1: out of distribution. Versions without a row fall back to avengers.cluster_distances.';
COMMENT ON COLUMN avengers.novelty_profiles.clustering_id IS 'Clustering version.';
COMMENT ON COLUMN avengers.novelty_profiles.mean IS 'Mean of the calibration vectors fitted on.';
COMMENT ON COLUMN avengers.novelty_profiles.threshold IS 'The clustering''s ood_quantile of held_out: the Mahalanobis distance at novelty 1. Rewritten when ood_quantile changes.';
COMMENT ON COLUMN avengers.novelty_profiles.held_out IS 'Mahalanobis distances of a random half of the calibration vectors to a Gaussian fitted on the other half, ascending: the threshold is never measured on the points it was fitted to.';
COMMENT ON COLUMN avengers.novelty_profiles.n_fit IS 'Calibration vectors the stored Gaussian was fitted on (a seeded sample of at most 20,000).';
COMMENT ON COLUMN avengers.novelty_profiles.seed IS 'Seed of the sample and of the held-out split.';

CREATE TABLE avengers.novelty_axes (
  clustering_id integer NOT NULL REFERENCES avengers.novelty_profiles (clustering_id) ON DELETE CASCADE,
  axis          integer NOT NULL CHECK (axis >= 0),
  direction     vector NOT NULL,
  variance      double precision NOT NULL CHECK (variance > 0),
  PRIMARY KEY (clustering_id, axis)
);
COMMENT ON TABLE avengers.novelty_axes IS 'Eigenvectors and eigenvalues of a novelty model''s shrunk covariance (one row per embedding dimension): Mahalanobis distance = sqrt(sum over axes of ((v - mean) . direction)^2 / variance).';
COMMENT ON COLUMN avengers.novelty_axes.clustering_id IS 'Clustering version (avengers.novelty_profiles).';
COMMENT ON COLUMN avengers.novelty_axes.axis IS 'Axis index, by ascending variance.';
COMMENT ON COLUMN avengers.novelty_axes.direction IS 'Unit eigenvector of the covariance.';
COMMENT ON COLUMN avengers.novelty_axes.variance IS 'Variance of the calibration vectors along it (shrunk: never 0).';

COMMENT ON COLUMN avengers.clusterings.ood_quantile IS 'A query is out of distribution when its Mahalanobis distance to the calibration Gaussian exceeds this quantile of held-out calibration queries'' (avengers.novelty_profiles); for a version without one, when its distance to the nearest centroid, in units of that cluster''s median calibration distance, exceeds this quantile of the calibration queries'' own (avengers.cluster_distances).';
COMMENT ON COLUMN avengers.route_log.novelty IS 'Mahalanobis distance to the clustering''s calibration Gaussian / its threshold (avengers.novelty_profiles); for a version without one, distance to the nearest centroid / that cluster''s ood_distance (avengers.cluster_distances). Above 1: out of distribution.';
"""

DOWNGRADE = r"""
DROP TABLE avengers.novelty_axes;
DROP TABLE avengers.novelty_profiles;
COMMENT ON COLUMN avengers.clusterings.ood_quantile IS 'A query is out of distribution when its distance to the nearest centroid, in units of that cluster''s median calibration distance, exceeds this quantile of the calibration queries'' own (see avengers.cluster_distances).';
COMMENT ON COLUMN avengers.route_log.novelty IS 'Distance to the nearest centroid / that cluster''s ood_distance (avengers.cluster_distances); above 1: out of distribution.';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
