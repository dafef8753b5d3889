"""Live commerce: viewer identity and credit, the product shelf and cards, and the event stream."""
