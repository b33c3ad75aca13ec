"""pw-ray."""
