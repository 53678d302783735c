"""Research analyses around the gap: the dataset-size bounds, compute break-even, ICL retention after fine-tuning."""
