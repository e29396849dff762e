"""`jewelmatch train`'s driver: the confirmations of the index in service exported as a folder
data set (`export`), and the run judged by the accuracy benchmark's protocol (`job`)."""
