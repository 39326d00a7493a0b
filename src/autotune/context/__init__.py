"""Context: token counting and fitting a conversation into the context budget."""
