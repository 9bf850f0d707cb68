"""Step 5: the balanced curated sample, its baseline and report (run name ``curated_sampling``)."""
