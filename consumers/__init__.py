"""Request handlers: commands decide and append; queries read projections; system reports."""
