"""The pruner contract: hook specs, the Pruner/ScorePruner API, masks, artifacts, plugin loading."""
