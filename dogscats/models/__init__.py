"""What is learned and chosen: heads, fine-tuning, blending and calibration, evaluation, the label audit, the export.
Imports the engine and below."""
