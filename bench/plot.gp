# Full-sync load time vs number of Services (log-log), one line per implementation.
#
#   gnuplot -e "datafile='bench/results/full-sync.dat'; outfile='bench/results/full-sync.svg'" bench/plot.gp
#
# The data file is written by bench/compare.py --ladder: a header line with the column names,
# then one line per size: services endpoints sluice_sync sluice_process iptables-legacy
# iptables-nft nft-kube-proxy nft-lean (seconds; NaN = not run, failed or timed out).

if (!exists("datafile")) datafile = 'bench/results/full-sync.dat'
if (!exists("outfile")) outfile = 'bench/results/full-sync.svg'

set terminal svg size 900,600 dynamic enhanced font 'sans,13' background rgb 'white'
set output outfile

set datafile missing 'NaN'
set title 'Full sync into an empty netns: N Services × E endpoints (TCP)'
set xlabel 'Services'
set ylabel 'load time (s)'
set logscale xy 10
set format x '10^{%L}'
set format y '10^{%L}'
set grid xtics ytics mxtics mytics lc rgb '#dddddd'
set key top left box opaque
set offsets graph 0.04, graph 0.04, 0, 0

# P1: sluice full sync at 10 000 × 10 must take ≤ 0.5 s
$P1 << EOD
10000 0.5
EOD

plot datafile using 1:3 with linespoints lw 2.5 pt 7 ps 0.8 lc rgb '#2ca02c' title 'sluice (sync: plan + encode + commit)', \
     ''       using 1:4 with linespoints lw 1.5 pt 6 ps 0.8 lc rgb '#2ca02c' dt 2 title 'sluice-load (whole process)', \
     ''       using 1:5 with linespoints lw 2 pt 5 ps 0.8 lc rgb '#d62728' title 'iptables-legacy-restore (kube-proxy layout)', \
     ''       using 1:6 with linespoints lw 2 pt 4 ps 0.8 lc rgb '#ff7f0e' title 'iptables-nft-restore (kube-proxy layout)', \
     ''       using 1:7 with linespoints lw 2 pt 9 ps 0.9 lc rgb '#1f77b4' title 'nft -f (kube-proxy nftables layout)', \
     ''       using 1:8 with linespoints lw 1.5 pt 8 ps 0.9 lc rgb '#9467bd' dt 4 title 'nft -f (lean layout, for context)', \
     $P1      using 1:2 with points pt 3 ps 2.5 lw 2 lc rgb '#2ca02c' title 'P1 target (10^4 Services ≤ 0.5 s)'
