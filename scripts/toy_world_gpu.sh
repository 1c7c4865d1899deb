#!/usr/bin/env bash
# Train toy-model candidates on one GPU and probe MTV's scaling on each (mtv_eval.toy.scaling).
# Used to choose the toy world's noise and training (results/toy_training/). Run through the
# device tool from the repo root, carrying the wheels of transformers 5.23 and its tokenizers:
#   scripts/toy_world_gpu.sh $OUT "a:0.4 b:0.2" "0.4 0.45" 3000
# Each candidate NAME:TRAIN_NOISE trains in its own process (all at once: the model is tiny),
# then it is probed at each support noise of PROBE_NOISES, in two processes (half the tasks each).
# Writes OUT/NAME.tar.gz (checkpoint, training log, probe JSON) and OUT/log.txt.
set -uo pipefail
out=$1; candidates=$2; probe_noises=$3; steps=$4
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TOKENIZERS_PARALLELISM=false
rm -rf /tmp/site /tmp/toyrun
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
work=/tmp/toyrun; mkdir -p $work
for c in $candidates; do
  name=${c%%:*}; noise=${c##*:}; mkdir -p $work/$name
  python3 -m mtv_eval.toy.train --out $work/$name/checkpoint --log-dir $work/$name/toy_training \
      --seed 0 --steps $steps --noise $noise --eval-every 1000 > $work/$name/train.txt 2>&1 &
done
wait
for c in $candidates; do
  name=${c%%:*}; tail -n 3 $work/$name/train.txt | sed "s/^/[$name train] /"
done
half1=single_colour,single_shape,single_position,single_size
half2=multi_colour,multi_shape,multi_count,multi_size
for c in $candidates; do
  name=${c%%:*}
  for noise in $probe_noises; do
    for half in 1 2; do
      tasks=$([ $half = 1 ] && echo $half1 || echo $half2)
      timeout 300 python3 -m mtv_eval.toy.scaling --checkpoint $work/$name/checkpoint --noise $noise --tasks $tasks \
          --budgets 2x5,2x50,2x400 --seeds 0,1,2 --out $work/$name/scaling-$noise-$half.json \
          > $work/$name/scaling-$noise-$half.txt 2>&1 &
    done
  done
done
wait
for c in $candidates; do
  name=${c%%:*}
  for noise in $probe_noises; do
    grep -h -E "^(single|multi)_" $work/$name/scaling-$noise-*.txt | sed "s/^/[$name@$noise] /"
  done
  tail -n 2 $work/$name/scaling-*.txt | grep -i -E "error|Traceback" | sed "s/^/[$name] /"
  tar -czf $out/$name.tar.gz -C $work/$name .
done
