def objective(trial):
    return 0.0
