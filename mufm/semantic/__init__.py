"""The semantic-token family: a w2v-BERT-like conformer model (`model.py`) trained on the
shared trainer (`task.py`); its k-means tokens at 25 Hz feed the first stage of the cascade."""
