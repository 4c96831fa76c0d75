"""Student mixers (one per file) and the builder that swaps them into a teacher."""
