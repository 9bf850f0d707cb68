"""Step 1: cut windows out of FITS mosaics (run name ``cutting_out``)."""
