"""Full-scene classification maps: the predictor (trainer.predict over scene windows) and the map writer and figures."""
