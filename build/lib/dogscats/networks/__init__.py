"""The frozen networks: the backbone registry, the EfficientNet-Lite port and its weights reader, each family's pixel
preprocessing, seeding. Imports the base only."""
