module sockredir-lab/goapps

go 1.19
