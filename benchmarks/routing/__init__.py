"""Routing without labels: does Z route pool images to the right teacher, on real pools?"""
