// The job page: one <video-generation-progress> for the job named in the path and, once the
// job has ended, a "Replay" button that re-enacts its run from the stored events (job-replay.js).

import './sign-in.js';
import './job-progress-drawer.js';
import './video-generation-progress.js';
import { asJobId, el } from './format.js';
import { JobReplay } from './job-replay.js';

const match = /^\/jobs\/([^/]+)\/?$/.exec(location.pathname);
const jobId = match ? asJobId(decodeURIComponent(match[1])) : null;
const progress = document.getElementById('progress');
const replaySlot = document.getElementById('replay');
if (jobId) {
  document.title = `Aura — job ${jobId.slice(0, 8)}`;
  progress.setAttribute('job-id', jobId);
} else {
  progress.setAttribute('job-id', 'invalid');
}

let replay = null;
const offer = el('button', { type: 'button', class: 'secondary replay-open', hidden: true }, 'Replay');
offer.addEventListener('click', async () => {
  if (replay || !jobId) return;
  offer.hidden = true;
  replay = new JobReplay(progress, jobId);
  replay.onClose = () => {
    replay = null;
  };
  replaySlot.append(replay.panel);
  await replay.open();
  replay?.panel.querySelector('.replay-play')?.focus();
});
replaySlot.append(offer);

// A finished job (live, or its history replayed on load) can be replayed.
for (const name of ['job-complete', 'job-failed', 'job-cancelled']) {
  progress.addEventListener(name, () => {
    if (!replay) offer.hidden = false;
  });
}
