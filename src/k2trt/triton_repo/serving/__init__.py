"""What each packaged model.py runs: one module per model, plus what they share (`common`)."""
