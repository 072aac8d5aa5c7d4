"""Learning on extracted features: routing between teachers, the logistic-regression head and its export
to plain ONNX ops, and int8 quantisation."""
