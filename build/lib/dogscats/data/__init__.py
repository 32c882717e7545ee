"""Photos and the files the pipeline keeps: manifests and inputs, images, feature files, overrides, predictions, the
submission, the demo, the exported classifier's file names. Imports the base only."""
