"""What is learned and chosen: the head and the fold heads, fine-tuning, blending and calibration, evaluation, the label
audit, the export. Imports the engine and below."""
