"""Groups, presence and blocking."""
