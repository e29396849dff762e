"""Teaching the image towers from confirmed matches: fine-tuning (`fine_tune`), model
versions (`versions`) and the gate a version must pass before it is promoted (`gate`)."""
