"""One router per concern: classify, health, models, metrics."""
