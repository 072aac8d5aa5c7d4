"""Speed: is Z as fast as running its sources apart, and what does a fixed-batch source cost?"""
