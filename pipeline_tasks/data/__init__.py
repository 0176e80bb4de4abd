"""Data: source readers (MovieLens, Amazon, generic, synthetic), ingest batches, the Spark session,
cleaning rules, the split, Great Expectations suites and the drift gate, and the split as
arrays for the models."""
