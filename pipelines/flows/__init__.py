"""The long flows that chain jobs: joint finetuning, the learning curve, the dataset-size study,
the demo, and the record of which phases of a run are done."""
