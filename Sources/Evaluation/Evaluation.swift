// Evaluation: see ARCHITECTURE.md
