"""Configuration: suite files, their sections and their JSON Schema (the layer above the contract)."""
