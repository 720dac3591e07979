// Tokenization: see ARCHITECTURE.md
