"""Step 2: merge the cutout runs into one manifest (run name ``merge_cutouts``)."""
