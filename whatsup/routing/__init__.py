"""Who is connected where, dedup, and the router that delivers or spools."""
