"""Step 4: hierarchical k-means with resampling (run name ``clustering``)."""
