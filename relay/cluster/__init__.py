"""Many nodes, one show: who holds a show's host (its origin) and how other nodes pull it."""
