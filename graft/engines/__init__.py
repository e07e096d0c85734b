"""The graft itself: name mapping, the plan, operators and their arithmetic, the streamed merge and the
resident graft."""
