# New-connection latency (connect(), µs) to the first and the last of N Services, per ruleset.
#
#   gnuplot -e "datafile='bench/results/dataplane.dat'; outfile='bench/results/dataplane.svg'" bench/dataplane.gp
#
# The data file is written by sluice-latency with its default --impls order: services, then
# first_p50 first_p99 last_p50 last_p99 for sluice (columns 2-5), iptables-legacy (6-9) and
# iptables-nft (10-13); NaN = not run.

if (!exists("datafile")) datafile = 'bench/results/dataplane.dat'
if (!exists("outfile")) outfile = 'bench/results/dataplane.svg'

set terminal svg size 900,600 dynamic enhanced font 'sans,13' background rgb 'white'
set output outfile

set datafile missing 'NaN'
set title 'New TCP connection through the node: connect() latency, p50 (solid) and p99 (dotted)'
set xlabel 'Services loaded'
set ylabel 'µs'
set logscale x 10
set logscale y 2
set format x '10^{%L}'
set grid xtics ytics lc rgb '#dddddd'
set key top left box opaque
set offsets graph 0.04, graph 0.04, 0, 0

plot datafile using 1:2 with linespoints lw 2.5 pt 7 lc rgb '#2ca02c' title 'sluice, first Service', \
     ''       using 1:4 with linespoints lw 2.5 pt 5 lc rgb '#98df8a' title 'sluice, last Service', \
     ''       using 1:6 with linespoints lw 2 pt 7 lc rgb '#d62728' title 'iptables-legacy, first', \
     ''       using 1:8 with linespoints lw 2 pt 5 lc rgb '#ff9896' title 'iptables-legacy, last', \
     ''       using 1:10 with linespoints lw 2 pt 7 lc rgb '#ff7f0e' title 'iptables-nft, first', \
     ''       using 1:12 with linespoints lw 2 pt 5 lc rgb '#ffbb78' title 'iptables-nft, last', \
     ''       using 1:3 with lines lw 1 dt 3 lc rgb '#2ca02c' notitle, \
     ''       using 1:5 with lines lw 1 dt 3 lc rgb '#98df8a' notitle, \
     ''       using 1:7 with lines lw 1 dt 3 lc rgb '#d62728' notitle, \
     ''       using 1:9 with lines lw 1 dt 3 lc rgb '#ff9896' notitle, \
     ''       using 1:11 with lines lw 1 dt 3 lc rgb '#ff7f0e' notitle, \
     ''       using 1:13 with lines lw 1 dt 3 lc rgb '#ffbb78' notitle
