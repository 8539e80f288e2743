// The job page: one <video-generation-progress> for the job named in the path.

import './sign-in.js';
import './job-progress-drawer.js';
import './video-generation-progress.js';
import { asJobId } from './format.js';

const match = /^\/jobs\/([^/]+)\/?$/.exec(location.pathname);
const jobId = match ? asJobId(decodeURIComponent(match[1])) : null;
const progress = document.getElementById('progress');
if (jobId) {
  document.title = `Aura — job ${jobId.slice(0, 8)}`;
  progress.setAttribute('job-id', jobId);
} else {
  progress.setAttribute('job-id', 'invalid');
}
