"""The model-surgery vocabulary: the recipe, the vector format, the name mapping, the merge operators and the
tensor arithmetic they share. Pure: it imports nothing of graft.io, graft.engines, graft.evals or the command line."""
