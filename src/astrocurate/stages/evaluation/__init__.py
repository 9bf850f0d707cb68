"""Step 6: pretrain an SSL encoder on the curated and the random sample and compare them."""
