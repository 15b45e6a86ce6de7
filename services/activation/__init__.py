"""The activation service: delivers audiences and events to destinations."""
