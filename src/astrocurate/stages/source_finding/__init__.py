"""Optional step: find the sources of FITS mosaics with PyBDSF (run name ``source_finding``)."""
