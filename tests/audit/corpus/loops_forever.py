"""Never ends (test corpus: the dynamic audit's time limit)."""
import time

while True:
    time.sleep(0.05)
