"""The recommender: TextSeqRec and its training, the baselines, tuning, compressed variants and
evaluation (full ranking, slices, bootstrap intervals)."""
