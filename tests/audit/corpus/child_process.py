"""A shell child writes into the lakehouse: pyfakefs cannot see it (test corpus)."""
import subprocess

subprocess.run("echo hi > data/lakehouse/from_shell.txt", shell=True, check=False)
