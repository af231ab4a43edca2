"""What survives a restart: offd, accounts, the small tables, group commit, the data dir."""
