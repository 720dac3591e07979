// Models: see ARCHITECTURE.md
