"""Results: per-run shards and their index, aggregation, leaderboards, statistics, plots, the site."""
