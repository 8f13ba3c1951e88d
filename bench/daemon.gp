# sluiced start -> first committed full sync (P6) and resident memory (P4) vs number of Services.
#
#   gnuplot -e "datafile='bench/results/daemon.dat'; outfile='bench/results/daemon.svg'" bench/daemon.gp
#
# The data file is written by bench/daemon_bench.py: services fresh_s adopt_s fresh_rss_mib
# fresh_hwm_mib adopt_rss_mib fresh_cpu_s (medians; NaN = no successful sample).

if (!exists("datafile")) datafile = 'bench/results/daemon.dat'
if (!exists("outfile")) outfile = 'bench/results/daemon.svg'

set terminal svg size 1100,480 dynamic enhanced font 'sans,12' background rgb 'white'
set output outfile
set datafile missing 'NaN'
set multiplot layout 1,2 title 'sluiced on a manifest file: N Services × 10 endpoints, fresh netns'

set xlabel 'Services'
set logscale x 10
set format x '10^{%L}'
set grid xtics ytics lc rgb '#dddddd'
set key top left box opaque
set offsets graph 0.06, graph 0.06, graph 0.05, 0

set title 'start → first committed full sync'
set ylabel 'seconds'
set yrange [0:*]
$P6 << EOD
10000 2
EOD
plot datafile using 1:2 with linespoints lw 2.5 pt 7 lc rgb '#2ca02c' title 'table absent', \
     ''       using 1:3 with linespoints lw 2 pt 5 dt 2 lc rgb '#1f77b4' title 'table present (restart adopts)', \
     ''       using 1:7 with linespoints lw 1.5 pt 6 dt 3 lc rgb '#7f7f7f' title 'CPU used (table absent)', \
     $P6      using 1:2 with points pt 3 ps 2.5 lw 2 lc rgb '#d62728' title 'P6 target (≤ 2 s at 10^4)'

set title 'resident memory after the first sync'
set ylabel 'MiB'
$P4 << EOD
10000 64
EOD
plot datafile using 1:4 with linespoints lw 2.5 pt 7 lc rgb '#2ca02c' title 'VmRSS', \
     ''       using 1:5 with linespoints lw 2 pt 6 dt 2 lc rgb '#ff7f0e' title 'VmHWM (peak, includes parsing)', \
     $P4      using 1:2 with points pt 3 ps 2.5 lw 2 lc rgb '#d62728' title 'P4 target (≤ 64 MiB at 10^4)'
unset multiplot
