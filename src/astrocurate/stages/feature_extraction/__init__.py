"""Step 3: one feature vector per cutout (run name ``feature_extraction``)."""
